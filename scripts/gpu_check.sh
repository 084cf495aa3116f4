#!/usr/bin/env bash
# The whole GPU check in one call, on a machine with a GPU but maybe without a Rust
# toolchain, a Vulkan loader or internet:
#   1. a Vulkan loader from .deb files if none is installed (NVIDIA's ICD when present),
#   2. the GPU tests (prebuilt test executables: kernels vs CPU twins, models vs fixtures),
#   3. every benchmark suite (backbone-bench, default shapes for the adapter, f32 and f16),
#      then `tune` (the fastest matmul tile per model product, written to $OUT/tune.json),
#      and the server's load test (backbone-bench serve-load, which starts bin/backbone),
#   4. PyTorch on the same shapes (scripts/peer_torch.py) when torch is importable,
#   5. one table of engine vs peer.
# Results (logs, JSON, Markdown) go to $OUT, or ./gpu-check-out.
#
# usage: scripts/gpu_check.sh [BUNDLE_DIR] [LOADER_DEB_DIR]
#   BUNDLE_DIR      made by scripts/gpu_bundle.sh (default target/gpu-check)
#   LOADER_DEB_DIR  libvulkan1 (and friends) .deb files (default .gl)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-target/gpu-check}
debs=${2:-.gl}
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "== $* ($(($(date +%s) - start)) s)"; }

step "Vulkan loader"
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    if compgen -G "$debs/*.deb" >/dev/null; then
        for f in "$debs"/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        echo "no Vulkan loader installed and no .deb files in $debs"
    fi
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"

step "Unpacking $bundle"
bin=$(mktemp -d)
for f in "$bundle"/*.xz; do xz -dc "$f" >"$bin/$(basename "$f" .xz)"; done
chmod +x "$bin"/*
export BACKBONE_BACKEND=${BACKBONE_BACKEND:-vulkan} BACKBONE_FIXTURES=$PWD/tests/fixtures WGPU_DEBUG=0
"$bin/backbone-bench" --list-adapters 2>/dev/null | tee "$out/adapters.txt"

step "GPU tests"
failed=0
for t in "$bin"/test-*; do
    if timeout 240 "$t" --test-threads=2 >"$out/$(basename "$t").log" 2>&1; then
        echo "PASS $(basename "$t"): $(grep 'test result' "$out/$(basename "$t").log")"
    else
        echo "FAIL $(basename "$t") (log: $out/$(basename "$t").log)"; tail -20 "$out/$(basename "$t").log"; failed=1
    fi
done

step "Benchmarks"
timeout 300 "$bin/backbone-bench" --dtype f32,f16 --json "$out/engine.json" --markdown --breakdown 2>/dev/null | tee "$out/engine.txt" || failed=1

step "f16 on cooperative matrices (tensor cores), where the adapter has them"
timeout 240 "$bin/backbone-bench" matmul attention cswin-attention bert cswin --dtype f16 --experimental-cooperative-matrix --json "$out/engine-coop.json" --markdown 2>/dev/null | tee "$out/engine-coop.txt" || failed=1

step "Tune (matmul tiles on the model products, f32 and f16)"
timeout 300 "$bin/backbone-bench" tune --dtype f32,f16 --tune-out "$out/tune.json" 2>/dev/null | tee "$out/tune.txt" || failed=1

step "Server load test (bert-micro: the server's batching and HTTP overhead on this GPU)"
timeout 60 "$bin/backbone-bench" serve-load --model tests/fixtures/bert-micro-12l-random --requests 5000 --clients 32 --json "$out/serve-load.json" 2>/dev/null | tee "$out/serve-load.txt" || failed=1

step "PyTorch peer"
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    timeout 240 python3 scripts/peer_torch.py --engine "$out/engine.json" --json "$out/peer.json" | tee "$out/peer.txt" || echo "peer script failed"
else
    echo "no CUDA PyTorch here: engine figures only"
fi

step "Engine vs peer"
python3 scripts/compare_peers.py "$out/engine.json" "$out/peer.json" | tee "$out/compare.md"
step "done"
exit $failed
