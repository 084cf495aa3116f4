//! Tune tables: written by `backbone-bench tune`, read back, used by the matmul only on the
//! adapter that measured them and only for the products they measured.

mod common;

use backbone::kernels::{self, Epilogue, MatmulTile};
use backbone::reference;
use backbone::tune::{MatmulChoice, TuneTable, adapter_key};
use backbone::{Context, ContextOptions, Recorder};
use common::*;

fn table(adapter: (String, String, String), tile: MatmulTile) -> TuneTable {
    TuneTable {
        adapter: adapter.0,
        backend: adapter.1,
        driver: adapter.2,
        commit: "test".into(),
        matmul: vec![MatmulChoice {
            m: 70,
            n: 90,
            k: 33,
            batch: 1,
            dtype: "f32".into(),
            tile,
            measured: vec![(tile, 1.0)],
        }],
    }
}

#[test]
fn tune_table_round_trip_and_exact_lookup() {
    let t = table(("a".into(), "Vulkan".into(), "d".into()), MatmulTile::Large);
    let json = serde_json::to_vec(&t).expect("json");
    let back = TuneTable::from_json(&json, "t.json").expect("parse");
    assert_eq!(back, t);
    assert_eq!(
        back.matmul_tile(70, 90, 33, 1, false),
        Some(MatmulTile::Large)
    );
    assert_eq!(
        back.matmul_tile(70, 90, 33, 1, true),
        None,
        "f16 is its own entry"
    );
    assert_eq!(
        back.matmul_tile(70, 90, 34, 1, false),
        None,
        "only the measured product"
    );
    let text = String::from_utf8(json).expect("utf8");
    assert!(text.contains("\"tile\":\"large\""), "{text}");
}

#[test]
fn a_malformed_tune_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join(format!("backbone-bad-tune-{}.json", std::process::id()));
    std::fs::write(&path, b"{\"adapter\": 3}").expect("write");
    let err = TuneTable::load(&path).expect_err("malformed").to_string();
    assert!(
        err.contains("backbone-bad-tune") && err.contains("tune table"),
        "{err}"
    );
}

fn context_with(t: TuneTable) -> Context {
    let mut options = ContextOptions::from_env().expect("options");
    options.tune_table = Some(t);
    pollster::block_on(Context::new(options)).expect("context")
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn the_matmul_uses_a_table_of_this_adapter_only() {
    let key = adapter_key(ctx().capabilities());
    // A choice the heuristic would not make here, for one product.
    let heuristic = MatmulTile::heuristic(ctx(), 70, 90, 1);
    let forced = MatmulTile::ALL
        .into_iter()
        .find(|t| *t != heuristic && t.fits(ctx()))
        .expect("another tile fits");
    let tuned = context_with(table(key.clone(), forced));
    assert!(tuned.tune_table().is_some());
    assert_eq!(MatmulTile::choose(&tuned, 70, 90, 33, 1, false), forced);
    assert_eq!(MatmulTile::choose(&tuned, 70, 90, 32, 1, false), heuristic);
    // The tuned product still computes the right thing.
    let mut r = rng(5);
    let (x, w) = (
        random_host(&mut r, &[70, 33], 1.0),
        random_host(&mut r, &[90, 33], 1.0),
    );
    let mut cpu = nan_host(&[70, 90]);
    reference::matmul(&x, &w, &mut cpu, Epilogue::none()).expect("twin");
    let y = nan_filled(&tuned, &[70, 90], "y");
    let mut rec = Recorder::new(&tuned);
    kernels::matmul(
        &mut rec,
        &upload(&tuned, &x, "x"),
        &upload(&tuned, &w, "w"),
        &y,
        Epilogue::none(),
    )
    .expect("record");
    rec.submit_blocking().expect("submit");
    assert_close("tuned matmul", &read_f32(&tuned, &y), &cpu.data, 2e-5, 1e-5);

    // Measured on another driver: ignored.
    let other = context_with(table((key.0, key.1, "another driver".into()), forced));
    assert!(other.tune_table().is_none());
    assert_eq!(MatmulTile::choose(&other, 70, 90, 33, 1, false), heuristic);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bench_tune_writes_a_table_the_cli_loads() {
    ctx();
    let path = std::env::temp_dir().join(format!("backbone-tune-{}.json", std::process::id()));
    let out = std::process::Command::new(common::bin("backbone-bench"))
        .args([
            "tune",
            "--bert",
            "minilm:2x4",
            "--cswin",
            "t:1x32",
            "--warmup",
            "0",
            "--iters",
            "1",
        ])
        .arg("--tune-out")
        .arg(&path)
        .output()
        .expect("backbone-bench tune");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = TuneTable::load(&path).expect("written table");
    assert!(t.matches(ctx().capabilities()), "keyed by this adapter");
    // MiniLM 2x4: QKV, attention output, MLP up, MLP down, keyed as kernels::matmul sees them
    // (batch 2 of 4 rows); then CSWin-T's products.
    let qkv = t
        .matmul
        .iter()
        .find(|c| (c.batch, c.m, c.n, c.k) == (2, 4, 1152, 384));
    assert!(qkv.is_some(), "{t:?}");
    assert!(t.matmul.iter().all(|c| !c.measured.is_empty()));
    let embed = std::process::Command::new(common::bin("backbone"))
        .args(["embed", "--model"])
        .arg(fixture("bert-micro-12l-random"))
        .arg("hello")
        .env("BACKBONE_TUNE", &path)
        .output()
        .expect("backbone embed");
    assert!(
        embed.status.success(),
        "{}",
        String::from_utf8_lossy(&embed.stderr)
    );
}
