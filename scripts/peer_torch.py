#!/usr/bin/env python3
"""PyTorch on the same card and shapes as a backbone-bench run, written as the same JSON
records (plus "peer"), for scripts/compare_peers.py.

Measures, for each (suite, shape, dtype) found in the engine's records (--engine: JSON Lines
as backbone-bench --json writes them, or a JSON array), in that dtype:
  matmul     x @ w.T (f32 with TF32 off, or f16)
  attention  F.scaled_dot_product_attention on [B, H, T, D]
  bert       transformers BertModel (random init from a BERT-base / MiniLM config, all tokens
             real), eager and replayed as a CUDA graph
  cswin      Microsoft's models/cswin.py, eager and CUDA graph, when --cswin-code points at it
Timing: CUDA events around each run, 3 warm-ups, 10 runs, median / min / max. Each record is
appended to --json (JSON Lines) as soon as it is measured.

usage: python3 scripts/peer_torch.py --engine engine.jsonl --json peer.jsonl [--cswin-code cswin.py]
Needs torch with CUDA; transformers for the bert suite. Works offline.
"""
import argparse
import importlib.util
import json
import statistics
import sys

import torch

WARMUP, ITERS = 3, 10


def timed(fn):
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(ITERS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def graphed(fn):
    """fn captured as a CUDA graph; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def record(suite, shape, dtype, peer, ms, flops, items=None):
    r = {
        "suite": suite, "shape": shape, "dtype": dtype, "peer": peer,
        "adapter": torch.cuda.get_device_name(), "backend": "cuda",
        "driver": f"CUDA {torch.version.cuda}, torch {torch.__version__}",
        "gpu_ms": ms, "gflops": flops / (ms["median"] * 1e-3) / 1e9,
        "items_per_s": items / (ms["median"] * 1e-3) if items else None,
    }
    print(f"{peer:<18} {suite:<10} {shape:<22} {dtype:<4} {ms['median']:10.4f} ms {r['gflops']:10.1f} GFLOP/s")
    return r


DTYPES = {"f32": torch.float32, "f16": torch.float16}


@torch.inference_mode()
def matmul(shape, dtype, flops):
    dims = list(map(int, shape.split("x")))
    m, n, k = dims * 3 if len(dims) == 1 else dims
    x = torch.randn(m, k, device="cuda", dtype=DTYPES[dtype])
    w = torch.randn(n, k, device="cuda", dtype=DTYPES[dtype])
    return [record("matmul", shape, dtype, "pytorch", timed(lambda: x @ w.T), flops)]


@torch.inference_mode()
def attention(shape, dtype, flops):
    b, h, t, d = map(int, shape.split("x"))
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=DTYPES[dtype]) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention
    return [record("attention", shape, dtype, "pytorch-sdpa", timed(lambda: f(q, k, v)), flops)]


def bert(shape, dtype, flops):
    from transformers import BertConfig, BertModel

    name, dims = shape.split(" ")
    batch, seq = map(int, dims.split("x"))
    layers, hidden, inter = (12, 768, 3072) if name == "bert-base" else (6, 384, 1536)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=inter)
    model = BertModel(config).cuda().eval().to(DTYPES[dtype])
    ids = torch.randint(1000, 30000, (batch, seq), device="cuda")
    with torch.inference_mode():
        eager = timed(lambda: model(input_ids=ids))
        graph = timed(graphed(lambda: model(input_ids=ids)))
    return [record("bert", shape, dtype, "pytorch-eager", eager, flops, batch),
            record("bert", shape, dtype, "pytorch-cudagraph", graph, flops, batch)]


def cswin(shape, dtype, flops, code):
    spec = importlib.util.spec_from_file_location("cswin_official", code)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cswin_official"] = module
    spec.loader.exec_module(module)
    variant, dims = shape.split(" ")
    batch, size = map(int, dims.split("x"))
    factory = {"cswin-t": "CSWin_64_12211_tiny_224", "cswin-s": "CSWin_64_24322_small_224", "cswin-b": "CSWin_96_24322_base_224"}[variant]
    model = getattr(module, factory)(img_size=size).cuda().eval().to(DTYPES[dtype])
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=DTYPES[dtype])
    with torch.inference_mode():
        eager = timed(lambda: model(x))
        graph = timed(graphed(lambda: model(x)))
    return [record("cswin", shape, dtype, "pytorch-eager", eager, flops, batch),
            record("cswin", shape, dtype, "pytorch-cudagraph", graph, flops, batch)]


def read_records(path):
    """backbone-bench's records: JSON Lines (one object per line) or one JSON array."""
    text = open(path).read().strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--cswin-code")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    done = set()
    with open(args.json, "w") as sink:
        for r in read_records(args.engine):
            suite, shape, dtype, flops = r.get("suite"), r.get("shape"), r.get("dtype"), r.get("flops")
            if (suite, shape, dtype) in done or dtype not in DTYPES or not flops:
                continue
            done.add((suite, shape, dtype))
            try:
                if suite == "matmul":
                    out = matmul(shape, dtype, flops)
                elif suite == "attention":
                    out = attention(shape, dtype, flops)
                elif suite == "bert":
                    out = bert(shape, dtype, flops)
                elif suite == "cswin" and args.cswin_code:
                    out = cswin(shape, dtype, flops, args.cswin_code)
                else:
                    out = []
            except Exception as e:  # one failed peer measurement should not lose the rest
                print(f"peer {suite} {shape} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
                out = []
            for rec in out:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
