//! Embeds the git commit into the build (`BACKBONE_COMMIT`), for benchmark records, and sets
//! `cfg(skip_gpu_tests)` when `BACKBONE_SKIP_GPU_TESTS=1`: the GPU tests are then reported as
//! ignored (a machine without any adapter) instead of passing with nothing compared; likewise
//! `cfg(has_minilm)`, `cfg(browser_tests)` and `cfg(python_tests)` for the tests that need
//! outside resources.
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(skip_gpu_tests)");
    println!("cargo:rerun-if-env-changed=BACKBONE_SKIP_GPU_TESTS");
    if std::env::var("BACKBONE_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=skip_gpu_tests");
    }
    // Tests that need something outside the repository are reported as ignored without it:
    // the real MiniLM weights (BACKBONE_MINILM_DIR) and the browser toolchain
    // (BACKBONE_BROWSER_TESTS=1); .ci/run provides both.
    println!("cargo::rustc-check-cfg=cfg(has_minilm)");
    println!("cargo::rustc-check-cfg=cfg(browser_tests)");
    println!("cargo::rustc-check-cfg=cfg(python_tests)");
    println!("cargo:rerun-if-env-changed=BACKBONE_PYTHON_TESTS");
    if std::env::var("BACKBONE_PYTHON_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=python_tests");
    }
    println!("cargo:rerun-if-env-changed=BACKBONE_MINILM_DIR");
    println!("cargo:rerun-if-env-changed=BACKBONE_BROWSER_TESTS");
    if std::env::var_os("BACKBONE_MINILM_DIR").is_some() {
        println!("cargo:rustc-cfg=has_minilm");
    }
    if std::env::var("BACKBONE_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=browser_tests");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=BACKBONE_COMMIT={commit}{suffix}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
