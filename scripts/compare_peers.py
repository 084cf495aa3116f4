#!/usr/bin/env python3
"""Joins backbone-bench's JSON records with peer_torch.py's on (suite, shape) and prints one
Markdown table: engine GPU ms, each peer's ms, and peer/engine (above 1: the engine is faster).

usage: scripts/compare_peers.py ENGINE.json [PEER.json]
"""
import json
import os
import sys


def main(engine_path, peer_path=None):
    engine = json.load(open(engine_path))
    peers = json.load(open(peer_path)) if peer_path and os.path.exists(peer_path) else []
    first = engine[0] if engine else {}
    print(f"engine: {first.get('adapter')} ({first.get('backend')}, driver {first.get('driver')}), commit {first.get('commit')}")
    names = sorted({p["peer"] for p in peers})
    head = ["suite", "shape", "engine GPU ms", "GFLOP/s", "check"] + [f"{n} ms" for n in names] + [f"{n} / engine" for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in engine:
        row = [r["suite"], r["shape"], f"{r['gpu_ms']['median']:.3f}", f"{r['gflops']:.0f}", "PASS" if r["check"]["passed"] else "FAIL"]
        ms = {}
        for n in names:
            match = [p for p in peers if p["peer"] == n and p["suite"] == r["suite"] and p["shape"] == r["shape"] and p["dtype"] == r["dtype"]]
            ms[n] = match[0]["gpu_ms"]["median"] if match else None
        row += [f"{ms[n]:.3f}" if ms[n] else "-" for n in names]
        row += [f"{ms[n] / r['gpu_ms']['median']:.2f}" if ms[n] else "-" for n in names]
        print("| " + " | ".join(row) + " |")
    extra = [p for p in peers if not any(p["suite"] == r["suite"] and p["shape"] == r["shape"] and p["dtype"] == r["dtype"] for r in engine)]
    if extra:
        print("\npeer figures without an engine counterpart (e.g. f16):")
        for p in extra:
            print(f"- {p['peer']} {p['suite']} {p['shape']} {p['dtype']}: {p['gpu_ms']['median']:.3f} ms ({p['gflops']:.0f} GFLOP/s)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
