#!/usr/bin/env python3
"""Joins backbone-bench's records with peer_torch.py's on (suite, shape, dtype) and prints one
Markdown table: each engine measurement (its variant: tensor cores or not, shader checks on or
off), its GPU ms, host ms and items/s, beside the peer's best (the CUDA-graph replay where there
is one) and peer/engine (above 1: the engine is faster). FAIL records show their error. Either
file may be JSON Lines or a JSON array, and either may be missing or empty.

usage: scripts/compare_peers.py ENGINE.jsonl [PEER.jsonl]
"""
import json
import math
import os
import sys


def read(path):
    if not path or not os.path.exists(path):
        return []
    text = open(path).read().strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a kill
    return out


def num(v, fmt):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def main(engine_path=None, peer_path=None):
    engine = [r for r in read(engine_path) if "suite" in r]
    peers = read(peer_path)
    if not engine:
        print("no engine records (see the step logs in gpu-check.tgz)")
        return
    first = engine[0]
    print(f"engine: {first.get('adapter')} ({first.get('backend')}, driver {first.get('driver')}), commit {first.get('commit')}")
    if peers:
        print(f"peer: {peers[0].get('adapter')} ({peers[0].get('driver')})")
    print()
    head = ["suite", "shape", "dtype", "variant", "checks", "engine GPU ms", "host ms", "GFLOP/s", "items/s", "check", "peer", "peer ms", "peer / engine"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in engine:
        ms = (r.get("gpu_ms") or {}).get("median")
        host = (r.get("host_ms") or {}).get("median")
        if r.get("error"):
            check = "FAIL: " + r["error"].replace("|", "/").replace("\n", " ")[:120]
        else:
            check = "PASS" if (r.get("check") or {}).get("passed") else "FAIL"
        match = [p for p in peers if p["suite"] == r["suite"] and p["shape"] == r["shape"] and p["dtype"] == r["dtype"]]
        match.sort(key=lambda p: (p["peer"] != "pytorch-cudagraph", p["gpu_ms"]["median"]))
        peer = match[0] if match else None
        pms = peer["gpu_ms"]["median"] if peer else None
        ratio = pms / ms if pms and ms and not math.isnan(ms) else None
        row = [
            r["suite"], r["shape"], r["dtype"], r.get("variant", "-"),
            "on" if r.get("shader_checks", True) else "off",
            num(ms, ".3f"), num(host, ".3f"), num(r.get("gflops"), ".0f"), num(r.get("items_per_s"), ".0f"),
            check, peer["peer"] if peer else "-", num(pms, ".3f"), num(ratio, ".2f"),
        ]
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
