#!/usr/bin/env python3
"""Packs the all-MiniLM-L6-v2 reference outputs into a small golden file for the tests.

The shared fixture's io.safetensors holds [6, 256, 384] hidden states, mostly padding. The
tests compare hidden states on real tokens only, so this keeps those rows (packed in batch
order, [real_tokens, 384]) plus the ids, masks and pooled outputs unchanged. Standard library
only (safetensors is a JSON header plus raw little-endian data).

usage: scripts/pack_minilm_golden.py SHARED/fixtures/all-minilm-l6-v2/io.safetensors OUT.safetensors
"""
import json
import struct
import sys


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], body[start:end])
    return tensors


def write(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def main(src, dst):
    t = read(src)
    dtype, (b, s), mask_raw = t["attention_mask"]
    mask = struct.unpack(f"<{b * s}q", mask_raw)
    out = {k: t[k] for k in ["input_ids", "attention_mask", "token_type_ids", "mean_pooled", "sentence_embedding", "pooler_output"]}
    for name in ["embedding_output", "layer1_output", "last_hidden_state"]:
        dtype, (b, s, c), data = t[name]
        rows = [data[(i * c * 4) : ((i + 1) * c * 4)] for i in range(b * s) if mask[i] == 1]
        out[f"{name}_real_tokens"] = ("F32", [len(rows), c], b"".join(rows))
    write(dst, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
