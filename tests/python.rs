//! The Python package (`python/`, PyO3 + maturin): its pytest suite (python/tests) compares
//! `TextEncoder.encode` / `.rerank` and `ImageEncoder` with the fixtures' golden outputs, the
//! `backbone` CLI and the real all-MiniLM-L6-v2, checks the GIL is released during forwards,
//! and runs examples/ray_embed.py on a local Ray over 2,000 sentences. It needs the package
//! installed (`pip install ./python`), pytest, Ray Data and the MiniLM weights, which `.ci/run`
//! provides, and is reported as ignored without BACKBONE_PYTHON_TESTS=1 and BACKBONE_MINILM_DIR.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
#[cfg_attr(
    not(all(python_tests, has_minilm)),
    ignore = "set BACKBONE_PYTHON_TESTS=1 and BACKBONE_MINILM_DIR (needs `pip install ./python`, \
              pytest and ray[data]; .ci/run installs them)"
)]
fn python_package_matches_the_cli_and_the_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The installed extension must be this tree's build, not an older wheel.
    let built = Command::new("python3")
        .args(["-c", "import backbone; print(backbone._native.__commit__)"])
        .current_dir("/")
        .output()
        .expect("run python3");
    assert!(
        built.status.success(),
        "the backbone package is not importable (pip install ./python): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let built = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert_eq!(
        built,
        backbone::COMMIT,
        "the installed backbone package was built from {built}, this tree is {}: reinstall it \
         (pip install ./python)",
        backbone::COMMIT
    );
    let status = Command::new("python3")
        .args(["-m", "pytest", "-q", "-rs", "python/tests"])
        .current_dir(root)
        .env("BACKBONE_BIN", common::bin("backbone"))
        .status()
        .expect("run pytest");
    assert!(status.success(), "pytest python/tests failed ({status})");
}
