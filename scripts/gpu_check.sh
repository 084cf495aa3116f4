#!/usr/bin/env bash
# The whole GPU check in one call of at most --budget seconds, on a machine with a GPU but
# maybe without a Rust toolchain, a Vulkan loader or internet. It runs small, separate steps
# in priority order and starts none once the budget is spent, so a slow or failing step loses
# only its own figures:
#   a. the cooperative-matrix and f16 kernel tests (prebuilt test executable)
#   b. matmul 4096³ and the BERT-base products, f32 and f16
#   c. the same on cooperative matrices (tensor cores)
#   d. (b) with shader runtime checks off (the A/B of wgpu's index clamping / loop bounding)
#   e. BERT-base 1x128 and 32x128, f16, per-kernel breakdown
#   f. CSWin-T 224, batch 1 and 64, f16
#   g. PyTorch on the same shapes (f16 included; CSWin-T with --cswin-code)
#   h. the rest, while time is left: the other GPU tests, f32 models, tune, the server's load
# On a software adapter (lavapipe) the shapes shrink to what it runs in seconds.
#
# $OUT receives exactly: gpu-check.tgz (every log, JSON Lines and Markdown), summary.md
# (engine beside peer), steps.txt (each step's status and time) and engine.jsonl (all engine
# records). The last thing printed is the summary table.
#
# usage: scripts/gpu_check.sh [--budget SECONDS] [--bundle DIR] [--debs DIR] [--cswin-code PATH]
#   --budget      wall-clock seconds for everything (default 480)
#   --bundle      made by scripts/gpu_bundle.sh (default target/gpu-check)
#   --debs        libvulkan1 (and friends) .deb files, used when no loader is installed (.gl)
#   --cswin-code  Microsoft's models/cswin.py, for the CSWin-T PyTorch peer
set -uo pipefail
cd "$(dirname "$0")/.."
budget=480 bundle=target/gpu-check debs=.gl cswin_code=
while [ $# -gt 0 ]; do
    case $1 in
        --budget) budget=$2; shift 2 ;;
        --bundle) bundle=$2; shift 2 ;;
        --debs) debs=$2; shift 2 ;;
        --cswin-code) cswin_code=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
work=$(mktemp -d)
start=$(date +%s)
reserve=12 # seconds kept for packing up and the summary
elapsed() { echo $(($(date +%s) - start)); }
export PYTHONUNBUFFERED=1

finish() {
    trap - EXIT INT TERM
    python3 scripts/compare_peers.py "$work/engine.jsonl" "$work/peer.jsonl" >"$work/summary.md" 2>>"$work/steps.txt"
    cp "$work/summary.md" "$work/steps.txt" "$out/" 2>/dev/null
    [ -f "$work/engine.jsonl" ] && cp "$work/engine.jsonl" "$out/"
    tar -czf "$out/gpu-check.tgz" -C "$work" . 2>/dev/null
    echo
    echo "== steps ($(elapsed) s of $budget)"
    cat "$work/steps.txt"
    echo
    echo "== engine vs peer (also in \$OUT/summary.md; logs in \$OUT/gpu-check.tgz)"
    cat "$work/summary.md"
    rm -rf "$work" "${bin:-}"
}
trap finish EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with stdout and stderr in $work/NAME.log
# (and on the terminal), under a timeout of min(CAP, what is left of the budget); skipped
# when under 10 s are left. Engine records are JSON Lines in $work/NAME.jsonl.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - reserve - $(elapsed)))
    if [ "$left" -lt 10 ]; then
        echo "SKIP  $name (budget spent)" >>"$work/steps.txt"
        return 1
    fi
    local t=$((cap < left ? cap : left))
    echo
    echo "== $name (timeout ${t} s, $(elapsed) s used of $budget)"
    local s0=$(date +%s) rc
    timeout --kill-after=5 "$t" "$@" >"$work/$name.log" 2>&1 &
    local pid=$!
    tail -n +1 -f "$work/$name.log" --pid=$pid 2>/dev/null
    wait $pid
    rc=$?
    local status=PASS
    [ $rc -eq 0 ] || status="FAIL(rc=$rc)"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT(${t}s)"
    printf '%-14s %-28s %4d s\n' "$status" "$name" $(($(date +%s) - s0)) >>"$work/steps.txt"
    [ -f "$work/$name.jsonl" ] && grep '"suite"' "$work/$name.jsonl" >>"$work/engine.jsonl"
    return $rc
}

echo "== Vulkan loader"
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    if compgen -G "$debs/*.deb" >/dev/null; then
        for f in "$debs"/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        echo "no Vulkan loader installed and no .deb files in $debs"
    fi
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_DRIVER_FILES=$icd && break
done
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$work/gpu.txt"

if ! compgen -G "$bundle/backbone-bench*" >/dev/null; then
    echo "no bundle in $bundle: run scripts/gpu_bundle.sh first" | tee -a "$work/steps.txt"
    exit 1
fi
bin=$(mktemp -d)
for f in "$bundle"/*; do
    case $f in
        *.xz) xz -dc "$f" >"$bin/$(basename "$f" .xz)" ;;
        *) cp "$f" "$bin/" ;;
    esac
done
chmod +x "$bin"/*
export BACKBONE_BACKEND=${BACKBONE_BACKEND:-vulkan} BACKBONE_FIXTURES=$PWD/tests/fixtures WGPU_DEBUG=0
# Every step measures the adapter, even a software one (the default device would take the
# fast CPU path there).
export BACKBONE_DEVICE=gpu
# Quiets the GL probe's complaint on machines without a desktop session.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$work}
"$bin/backbone-bench" --list-adapters 2>&1 | tee "$work/adapters.txt"
bench=("$bin/backbone-bench")
coop=(--experimental-cooperative-matrix)

# The adapter the benches pick first (BACKBONE_BACKEND=vulkan unless set): lavapipe is "Cpu".
if grep -m1 '^[0-9]*: ' "$work/adapters.txt" | grep -q 'Cpu'; then
    echo "software adapter: small stand-in shapes (no figure here is a GPU figure)"
    software=1
    products=256,128x2304x768,128x3072x768
    berts=minilm:1x32
    cswins=t:1x64
    iters=(--warmup 1 --iters 2)
    requests=200
else
    software=0
    # 4096³; BERT-base at 1x128 (QKV, FFN up) and at 32x128 (FFN down).
    products=4096,128x2304x768,128x3072x768,4096x768x3072
    berts=base:1x128,base:32x128
    cswins=t:1,t:64
    iters=(--warmup 2 --iters 5)
    requests=2000
fi

# a. tensor-core and f16 kernel tests
if [ -x "$bin/test-kernels_f16" ]; then
    step a-kernel-tests-f16 120 "$bin/test-kernels_f16" --test-threads=2 --nocapture
fi
# b-d. matmul: default, tensor cores, shader checks off
step b-matmul 90 "${bench[@]}" matmul --sizes "$products" --dtype f32,f16 "${iters[@]}" --json "$work/b-matmul.jsonl"
if [ "$software" = 0 ]; then
    step c-matmul-coop 60 "${bench[@]}" matmul --sizes "$products" --dtype f16 "${coop[@]}" "${iters[@]}" --json "$work/c-matmul-coop.jsonl"
else
    echo "SKIP  c-matmul-coop (no cooperative matrices on a software adapter)" >>"$work/steps.txt"
fi
step d-matmul-checks-off 90 "${bench[@]}" matmul --sizes "$products" --dtype f32,f16 --shader-checks off "${iters[@]}" --json "$work/d-matmul-checks-off.jsonl"
# e-f. models, f16 on tensor cores where the adapter has them
step e-bert-f16 120 "${bench[@]}" bert --bert "$berts" --dtype f16 "${coop[@]}" --breakdown "${iters[@]}" --json "$work/e-bert-f16.jsonl"
step f-cswin-f16 120 "${bench[@]}" cswin --cswin "$cswins" --dtype f16 "${coop[@]}" --breakdown "${iters[@]}" --json "$work/f-cswin-f16.jsonl"
# g. the PyTorch peer on the shapes measured so far
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    peer_args=(--engine "$work/engine.jsonl" --json "$work/peer.jsonl")
    [ -n "$cswin_code" ] && peer_args+=(--cswin-code "$cswin_code")
    step g-peer-torch 150 python3 scripts/peer_torch.py "${peer_args[@]}"
else
    echo "SKIP  g-peer-torch (no CUDA PyTorch here)" >>"$work/steps.txt"
fi
# h. everything else, while time is left
for t in "$bin"/test-*; do
    [ "$(basename "$t")" = test-kernels_f16 ] && continue
    step "h-$(basename "$t")" 120 "$t" --test-threads=2
done
step h-bert-f32 120 "${bench[@]}" bert --bert "$berts" --dtype f32 "${iters[@]}" --json "$work/h-bert-f32.jsonl"
step h-attention 60 "${bench[@]}" attention cswin-attention --dtype f32,f16 "${coop[@]}" "${iters[@]}" --json "$work/h-attention.jsonl"
step h-tune 120 "${bench[@]}" tune --bert "$berts" --cswin "$cswins" --dtype f32,f16 --tune-out "$work/tune.json"
if [ -x "$bin/backbone" ]; then
    step h-serve-load 60 "${bench[@]}" serve-load --model tests/fixtures/bert-micro-12l-random --requests "$requests" --clients 16 --json "$work/h-serve-load.jsonl"
fi
exit 0
