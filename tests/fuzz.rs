//! Fuzz-style property tests of every loader on stable Rust: thousands of seeded mutations of
//! valid safetensors files (weights and inputs) and config.json files. Each must load or fail
//! with an error; none may panic, abort or take unbounded memory. A failing case is written to
//! the temp folder with its seed so it can be replayed.
//!
//! `BACKBONE_FUZZ_CASES` (per loader, default 2000) and `BACKBONE_FUZZ_SEED` change the run.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use backbone::models::cswin::{self, CswinConfig, CswinWeights};
use backbone::models::text::{self, TextConfig, TextInput, TextWeights};
use backbone::reference::HostTensor;
use common::fixture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> usize {
    std::env::var("BACKBONE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn seed() -> u64 {
    std::env::var("BACKBONE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_b0b0)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Values that break careless size arithmetic.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "1e9",
    "1e308",
    "-0",
    "0.5",
    "NaN",
    "null",
    "\"12\"",
    "[]",
    "{}",
    "true",
    "[1,2]",
    "[0,0,0,0]",
    "[1000000,1,1,1]",
    "[2147483647,2147483647]",
];

/// One random mutation of `bytes`: flip, overwrite, insert, delete, truncate, duplicate a
/// span, or replace a number in the text by a hostile one.
fn mutate(rng: &mut StdRng, bytes: &[u8], text_region: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let rounds = rng.random_range(1..=3);
    for _ in 0..rounds {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let region = text_region.min(b.len()).max(1);
        let at = rng.random_range(0..region);
        match rng.random_range(0..8) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = rng.random(),
            2 => b.insert(at, rng.random()),
            3 => {
                b.remove(at);
            }
            4 => b.truncate(rng.random_range(0..b.len())),
            5 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let span = b[at..end].to_vec();
                b.splice(at..at, span);
            }
            _ => {
                // Replace the run of digits around `at` (or at `at`) by a hostile value.
                let is_num = |c: u8| c.is_ascii_digit() || c == b'.' || c == b'-' || c == b'e';
                let mut start = at;
                while start > 0 && is_num(b[start - 1]) {
                    start -= 1;
                }
                let mut end = at;
                while end < region && is_num(b[end]) {
                    end += 1;
                }
                let value = HOSTILE_NUMBERS[rng.random_range(0..HOSTILE_NUMBERS.len())];
                b.splice(start..end, value.bytes());
            }
        }
    }
    b
}

/// A safetensors file's bytes with its header length fixed up after a header mutation
/// (sometimes left wrong on purpose).
fn mutate_safetensors(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(valid[..8].try_into().expect("8 bytes")) as usize;
    match rng.random_range(0..4) {
        // The header JSON, length re-declared.
        0 | 1 => {
            let header = mutate(rng, &valid[8..8 + n], n);
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&valid[8 + n..]);
            out
        }
        // A hostile header length.
        2 => {
            let mut out = valid.to_vec();
            let len: u64 = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => n as u64 + rng.random_range(1..64),
                2 => (n as u64).saturating_sub(rng.random_range(1..64)),
                _ => u64::MAX - rng.random_range(0..16),
            };
            out[..8].copy_from_slice(&len.to_le_bytes());
            out
        }
        // Anywhere in the file, header length as it is.
        _ => mutate(rng, valid, valid.len()),
    }
}

/// Runs `cases` mutations through `load`, which gets the mutated bytes; counts what loaded,
/// fails on any panic (the input is saved for replay).
fn fuzz(
    name: &str,
    valid: &[u8],
    mutate: fn(&mut StdRng, &[u8]) -> Vec<u8>,
    load: impl Fn(&[u8]) -> bool,
) {
    let (n, seed) = (cases(), seed());
    let mut rng = StdRng::seed_from_u64(seed ^ name.len() as u64);
    let before = peak_rss_mib();
    let (mut loaded, mut panics) = (0usize, Vec::new());
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..n {
        let bytes = mutate(&mut rng, valid);
        match catch_unwind(AssertUnwindSafe(|| load(&bytes))) {
            Ok(ok) => loaded += usize::from(ok),
            Err(e) => {
                let message = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = std::env::temp_dir().join(format!("backbone-fuzz-{name}-{seed}-{case}"));
                std::fs::write(&path, &bytes).ok();
                panics.push(format!(
                    "case {case}: {message} (input saved to {})",
                    path.display()
                ));
            }
        }
    }
    std::panic::set_hook(quiet);
    let grown = peak_rss_mib().saturating_sub(before);
    eprintln!(
        "fuzz {name}: {n} mutations (seed {seed}): {loaded} loaded, {} refused with an error, \
         {} panicked; peak memory grew {grown} MiB",
        n - loaded - panics.len(),
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{name}: loaders panicked:\n{}",
        panics.join("\n")
    );
    assert!(grown < 1024, "{name}: peak memory grew {grown} MiB");
    assert!(
        loaded < n,
        "{name}: no mutation was refused: the fuzzer is not reaching the checks"
    );
}

/// Writes `bytes` to a scratch file and reads it back through the bounded reader, as the CLI
/// does (so the declared-size checks run too).
fn through_file(name: &str, bytes: &[u8]) -> backbone::Result<Vec<u8>> {
    let path = std::env::temp_dir().join(format!(
        "backbone-fuzz-{name}-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, bytes).expect("scratch file");
    backbone::io::read_safetensors(&path)
}

#[test]
fn bert_weights_loader_survives_mutations() {
    let dir = fixture("bert-micro-12l-random");
    let config = text::load_config(&dir).expect("config");
    let valid = std::fs::read(dir.join("model.safetensors")).expect("weights");
    fuzz("bert-weights", &valid, mutate_safetensors, |bytes| {
        through_file("bert-weights", bytes)
            .and_then(|b| TextWeights::from_safetensors(&config, &b).map(|_| ()))
            .is_ok()
    });
}

#[test]
fn cswin_weights_loader_survives_mutations() {
    let dir = fixture("cswin-micro-s3full");
    let config = cswin::load_config(&dir).expect("config");
    let valid = std::fs::read(dir.join("model.safetensors")).expect("weights");
    fuzz("cswin-weights", &valid, mutate_safetensors, |bytes| {
        through_file("cswin-weights", bytes)
            .and_then(|b| CswinWeights::from_safetensors(&config, &b).map(|_| ()))
            .is_ok()
    });
}

#[test]
fn input_file_loaders_survive_mutations() {
    // Integer tensors as the CLI receives them: I64 input_ids / attention_mask.
    let ids64: Vec<i64> = vec![101, 7, 8, 102, 0, 101, 9, 10, 11, 102];
    let mask64: Vec<i64> = vec![1, 1, 1, 1, 0, 1, 1, 1, 1, 1];
    let views = [("input_ids", &ids64), ("attention_mask", &mask64)]
        .into_iter()
        .map(|(name, v)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![2, 5],
                bytemuck::cast_slice(v),
            )
            .expect("view");
            (name.to_string(), view)
        })
        .collect::<Vec<_>>();
    let valid = safetensors::tensor::serialize(views, None).expect("serialize");
    let config = text::load_config(&fixture("bert-micro-12l-random")).expect("config");
    fuzz("bert-input", &valid, mutate_safetensors, |bytes| {
        through_file("bert-input", bytes)
            .and_then(|b| TextInput::from_safetensors(&b))
            .and_then(|x| x.validate(&config))
            .is_ok()
    });

    let n = 2 * 3 * 9 * 11;
    let pixels =
        HostTensor::new(&[2, 3, 9, 11], (0..n).map(|i| i as f32 / 7.0).collect()).expect("pixels");
    let valid =
        backbone::models::weights::to_safetensors(&[("pixel_values", &pixels)]).expect("st");
    let config = cswin::load_config(&fixture("cswin-micro-224")).expect("config");
    fuzz("pixel-input", &valid, mutate_safetensors, |bytes| {
        through_file("pixel-input", bytes)
            .and_then(|b| cswin::pixel_values_from_safetensors(&b))
            .and_then(|x| cswin::check_input(&config, &x))
            .is_ok()
    });
}

fn mutate_json(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    mutate(rng, valid, valid.len())
}

#[test]
fn config_loaders_survive_mutations() {
    let bert_json =
        std::fs::read(fixture("bert-micro-12l-random").join("config.json")).expect("bert");
    fuzz("bert-config", &bert_json, mutate_json, |bytes| {
        match TextConfig::from_json(&String::from_utf8_lossy(bytes)) {
            // A config that loads has sizes whose products are representable: the derived
            // sizes are computed here to prove it.
            Ok(c) => {
                let table = c.vocab_size.checked_mul(c.hidden_size);
                let mlp = c.intermediate_size.checked_mul(c.hidden_size);
                assert!(
                    table.is_some() && mlp.is_some() && c.head_dim() > 0,
                    "{c:?}"
                );
                true
            }
            Err(_) => false,
        }
    });
    for name in ["cswin-micro-224", "cswin-micro-odd", "cswin-micro-s3full"] {
        let json = std::fs::read(fixture(name).join("config.json")).expect("cswin");
        fuzz(name, &json, mutate_json, |bytes| {
            match CswinConfig::from_json(&String::from_utf8_lossy(bytes)) {
                Ok(c) => {
                    // Every derived size, and the geometry at the model's own size.
                    for s in 0..4 {
                        let _ = (c.dim(s), c.hidden(s), c.resolution(s), c.branches(s));
                    }
                    let g = cswin::Geometry::new(&c, &[1, c.in_chans, c.img_size, c.img_size]);
                    if let Ok(g) = g {
                        for s in 0..4 {
                            let _ = g.branches(&c, s, c.branches(s));
                        }
                    }
                    true
                }
                Err(_) => false,
            }
        });
    }
}

/// A pickle with 1 to 8 snippets spliced in: memo gets (`BINGET`, `LONG_BINGET`), puts
/// (`BINPUT`, `MEMOIZE`), `DUP` runs, and 4-byte ints that are huge or zero (sizes and strides).
fn mutate_ops(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let key = rng.random_range(0..8u8);
        let snippet: Vec<u8> = match rng.random_range(0..6) {
            0 => vec![b'h', key],
            1 => vec![b'j', key, 0, 0, 0],
            2 => vec![b'q', key],
            3 => vec![0x94],
            4 => vec![b'2'; rng.random_range(1..64)],
            _ => {
                let v: i32 = [0, 1 << 28, i32::MAX, 1 << 30][rng.random_range(0..4)];
                let mut j = vec![b'J'];
                j.extend(v.to_le_bytes());
                j
            }
        };
        let at = rng.random_range(0..=out.len());
        out.splice(at..at, snippet);
    }
    out
}

/// The PyTorch checkpoint reader: the raw archive mutated (mostly refused by the zip layer),
/// and the pickle inside mutated then re-archived, so the interpreter itself meets every kind
/// of broken opcode stream.
#[test]
fn pth_reader_survives_mutations() {
    use std::io::{Read, Write};
    let valid = std::fs::read(fixture("pth/views.pth")).expect("views.pth");
    fuzz(
        "pth-archive",
        &valid,
        |rng, v| mutate(rng, v, v.len()),
        |bytes| backbone::models::pth::read_pth(bytes, "fuzz.pth").is_ok(),
    );
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&valid[..])).expect("zip");
    let entries: Vec<(String, Vec<u8>)> = (0..archive.len())
        .map(|i| {
            let mut f = archive.by_index(i).expect("entry");
            let mut body = Vec::new();
            f.read_to_end(&mut body).expect("read");
            (f.name().to_string(), body)
        })
        .collect();
    let pickle_at = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .expect("pkl");
    let pickle = entries[pickle_at].1.clone();
    let rearchived = |mutated: &[u8]| {
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (i, (name, body)) in entries.iter().enumerate() {
            out.start_file(name.as_str(), stored).expect("entry");
            out.write_all(if i == pickle_at { mutated } else { body })
                .expect("write");
        }
        out.finish().expect("finish").into_inner()
    };
    // The shapes that found memory bombs: memo gets, puts and DUPs spliced in, and sizes and
    // strides replaced by huge numbers and zeros.
    fuzz("pth-pickle-memo-views", &pickle, mutate_ops, |mutated| {
        backbone::models::pth::read_pth(&rearchived(mutated), "fuzz.pth").is_ok()
    });
    fuzz(
        "pth-pickle",
        &pickle,
        |rng, v| mutate(rng, v, v.len()),
        |mutated| backbone::models::pth::read_pth(&rearchived(mutated), "fuzz.pth").is_ok(),
    );
}
