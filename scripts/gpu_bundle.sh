#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine that may have no Rust toolchain:
# release binaries (backbone-bench, backbone) and the GPU test executables, stripped and
# xz-compressed into target/gpu-check/ (small enough to travel with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-check
rm -rf "$out" && mkdir -p "$out"
cargo build --release --bin backbone-bench --bin backbone
cp target/release/backbone-bench target/release/backbone "$out/"
# The test executables that exercise the GPU: kernels vs twins, models vs fixtures, errors.
tests=(kernels kernels_matmul kernels_attention kernels_grid kernels_embeddings kernels_f16 bert bert_f16 cswin cswin_f16 context errors soak)
cargo test --release --no-run --message-format=json $(printf -- '--test %s ' "${tests[@]}") 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], sys.argv[1] + "/test-" + msg["target"]["name"])
' "$out"
strip "$out"/*
xz -T0 -6 "$out"/*
ls -la "$out"
