#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine that may have no Rust toolchain:
# release binaries (backbone-bench, backbone) and GPU test executables, stripped and
# xz-compressed into target/gpu-check/, then prints the size of what must travel (this bundle
# plus the tracked tree) and fails above the limit (48 MiB by default: a GPU machine takes
# 64 MiB of tree, and the rest is headroom).
#
# Test executables are added in priority order (the cooperative-matrix and f16 kernel tests
# first) while the total stays under the limit; those left out are named.
#
# usage: scripts/gpu_bundle.sh [--limit-mib N]
set -euo pipefail
cd "$(dirname "$0")/.."
limit_mib=48
while [ $# -gt 0 ]; do
    case $1 in
        --limit-mib) limit_mib=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
limit=$((limit_mib * 1024 * 1024))
out=target/gpu-check
rm -rf "$out" && mkdir -p "$out"
if [ "${BACKBONE_SKIP_GPU_TESTS:-}" = 1 ]; then
    echo "BACKBONE_SKIP_GPU_TESTS=1 would build the GPU tests as ignored: unset it" >&2
    exit 1
fi
cargo build --release --bin backbone-bench --bin backbone
cp target/release/backbone-bench target/release/backbone "$out/"
# GPU test executables, most wanted first: tensor cores and f16, then the f32 kernels, then
# the models.
tests=(kernels_f16 kernels_matmul kernels_split_k kernels_attention bert_f16 cswin_f16 kernels kernels_grid kernels_embeddings bert cswin context errors)
cargo test --release --no-run --message-format=json $(printf -- '--test %s ' "${tests[@]}") 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], sys.argv[1] + "/test-" + msg["target"]["name"])
' "$out"
strip "$out"/*
xz -T0 -6 "$out"/backbone-bench "$out"/backbone

tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((tree + $(du -cb "$out"/*.xz | tail -1 | cut -f1)))
left_out=()
for t in "${tests[@]}"; do
    f="$out/test-$t"
    [ -f "$f" ] || continue
    xz -T0 -6 "$f"
    size=$(stat -c %s "$f.xz")
    if [ $((total + size)) -le "$limit" ]; then
        total=$((total + size))
    else
        rm "$f.xz"
        left_out+=("$t")
    fi
done
rm -f "$out"/test-*[!z]  # uncompressed leftovers
ls -la "$out"
mib() { python3 -c "print(f'{$1 / 2**20:.1f}')"; }
echo "to send: tracked tree $(mib "$tree") MiB + bundle $(mib $((total - tree))) MiB = $(mib "$total") MiB (limit $limit_mib MiB)"
[ ${#left_out[@]} -eq 0 ] || echo "left out to stay under the limit: ${left_out[*]}"
if [ "$total" -gt "$limit" ]; then
    echo "FAIL: $(mib "$total") MiB is over the $limit_mib MiB limit" >&2
    exit 1
fi
