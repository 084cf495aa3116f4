#!/usr/bin/env python3
"""The PyTorch side of `backbone-bench cpu`: a text encoder's forward on the CPU with a given
thread count, one JSON line per shape {"shape": "BxT", "ms": median}.

--model is a Hugging Face folder (real weights) or a folder holding only config.json (random
weights of that config: the timing is the same). Inputs are fixed ids with a full mask, as
the engine's side uses; the forward is transformers' AutoModel under inference_mode, which is
what sentence-transformers' encode runs before pooling."""
import argparse
import json
import os
import time

import torch
from transformers import AutoConfig, AutoModel

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--shapes", default="1x128,8x128,32x128")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--iters", type=int, default=3)
args = ap.parse_args()

torch.set_num_threads(args.threads)
if os.path.exists(os.path.join(args.model, "model.safetensors")) or os.path.exists(
    os.path.join(args.model, "pytorch_model.bin")
):
    model = AutoModel.from_pretrained(args.model)
else:
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(args.model))
model.eval()

for shape in args.shapes.split(","):
    b, t = (int(v) for v in shape.split("x"))
    ids = torch.tensor([[1000 + ((r * t + i) * 7919) % 20000 for i in range(t)] for r in range(b)])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
        times = []
        for _ in range(max(1, args.iters)):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(json.dumps({"shape": shape, "ms": times[len(times) // 2], "threads": args.threads}), flush=True)
